"""Reporting: tables (and later plots) of what runs found."""
