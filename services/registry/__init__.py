"""Registry: registers trained models, runs validation gates and assigns champion/challenger."""
