"""Reports built only from files: tables, plots, synthetic-set quality, leakage, cost, one HTML page."""
