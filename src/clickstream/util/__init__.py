"""Small helpers every part shares: retries, redaction, natural order, printable text."""
