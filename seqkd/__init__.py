"""The seqkd command line and the end-to-end demo pipeline."""
