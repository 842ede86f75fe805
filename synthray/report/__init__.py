"""Results people look at: the study's figures and a sortable table, in one HTML page (`synthray report`)."""
