"""What is coded: the compression model (transforms, factorized prior on z) around an entropy
model from ``cbexp.entropy``. Pure TensorFlow and tfc: no files, no MLflow, no command line."""
