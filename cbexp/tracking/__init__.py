"""MLflow: the store, runs (start, resume, parameters, metrics), sweeps, and the trained model
as an MLflow pyfunc model."""
