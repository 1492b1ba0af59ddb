"""`python -m fdl_cli` runs the command line (also under torchrun)."""

from fdl_cli.cli import main

if __name__ == "__main__":
    main()
