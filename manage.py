#!/usr/bin/env python
"""Troupe's command line: `python manage.py --help`."""

from orchestration.cli import main

if __name__ == "__main__":
    main()
