"""python -m bench.gpu_check STAGE (what scripts/gpu_check.sh runs; cli.py documents it)."""
import sys

from .cli import main

sys.exit(main())
