"""Infrastructure shared by the pipeline and the trainer (below both, above hoidata):
device selection and options declared once as dataclass fields for the command line."""
