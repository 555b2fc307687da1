from kdns.cli import main

# Guarded: worker processes (parsefiles._parse_files, spawned) import this module too.
if __name__ == "__main__":
    raise SystemExit(main())
