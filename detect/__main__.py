"""`python -m detect ...`: the same as the `detect` command."""
from detect.entry import main

if __name__ == "__main__":
    main()
