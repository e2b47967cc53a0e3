"""Studies: grid expansion into jobs with stable ids, launchers, a runner that skips finished work."""
