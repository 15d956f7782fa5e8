"""One module per ``sam3d-nnunet`` sub-command."""
