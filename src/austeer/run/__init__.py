"""Running a model: generation, likelihoods, neutral perplexity and damage measures."""
