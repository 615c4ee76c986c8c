"""The stream consumer and its rules: raw records, cleaning, event time, where to resume."""
