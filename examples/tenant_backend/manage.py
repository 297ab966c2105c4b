#!/usr/bin/env python
"""Django's command-line utility for the tenant_backend sample project."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tenant_backend.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
