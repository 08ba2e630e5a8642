"""`python -m worker`: the same as `pureebm worker`."""

import argparse

from worker.commands import add_arguments

parser = argparse.ArgumentParser(prog="python -m worker", description="a PureEBM worker")
add_arguments(parser)
args = parser.parse_args()
args.run(args)
