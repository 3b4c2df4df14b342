"""How a model is stored and used to code images: the ``.cbx`` container, the codec runtime,
SavedModel exports and model directories. No command line (that is ``cbexp.cli``)."""
