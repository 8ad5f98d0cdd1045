"""`python -m llavamini.train RECIPE.yaml [--key value ...]` (what torchrun launches)."""

from llavamini.train.train import main

main()
