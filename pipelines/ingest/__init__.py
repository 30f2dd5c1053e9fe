"""Getting frames in: the camera producer and multi-camera files."""
