"""Training data: the MovieLens user world, event vectors, UserBatch collation, pretraining pairs, scenarios."""
