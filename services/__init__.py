"""Ray Serve teacher service and Ray Data labeling job."""
