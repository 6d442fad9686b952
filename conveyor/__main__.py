"""`python -m conveyor`: the same command line as the `conveyor` script."""

from conveyor.app.cli import main

if __name__ == "__main__":
    main(prog_name="conveyor")
