"""``python -m segcompass.commands ...`` is ``segcompass ...``."""

from .main import main

if __name__ == "__main__":
    raise SystemExit(main())
