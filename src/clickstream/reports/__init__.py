"""Hourly category-management reports: top-10 viewed, top-10 bought, conversion rates."""

from clickstream.reports.hourly import ReportSummary, write_reports

__all__ = ["ReportSummary", "write_reports"]
