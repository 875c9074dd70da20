"""python -m experiments.claims_arithmetic: see experiments/claims_arithmetic/__init__.py."""

from experiments.claims_arithmetic import main

if __name__ == '__main__':
  main()
