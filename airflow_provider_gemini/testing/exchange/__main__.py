"""`python -m airflow_provider_gemini.testing.exchange`: see `cli.main`."""

import sys

from .cli import main

sys.exit(main())
