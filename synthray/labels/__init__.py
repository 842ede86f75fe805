"""Labels: pseudo-labels (boxes, instance masks, scores) for images that have only a class, from a promptable
segmenter, for the dense tasks (detection and segmentation transfer, issue 26)."""
