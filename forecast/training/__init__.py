"""The one fit / best-checkpoint / forecast path, and the train command that orchestrates it."""
