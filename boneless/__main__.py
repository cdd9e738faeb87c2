"""`python -m boneless`: the command line (as the `boneless` script)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
