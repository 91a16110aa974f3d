"""`make bench`: sdedge vs diffusers (torch) vs optimum's ORT pipeline on the demo model, in one process."""
