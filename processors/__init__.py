"""The Faust worker: splits raw webhook batches into typed, normalised records."""
