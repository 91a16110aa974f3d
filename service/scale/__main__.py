"""`python -m service.scale [sdedge serve flags]` = `sdedge serve --ray [flags]`."""

import sys

from service.cli.commands import main

if __name__ == "__main__":
    sys.exit(main(["serve", "--ray", *sys.argv[1:]]))
