"""The ticket artifact, which knows no training: its format, export, model card, loading, download and push."""
