"""Build, package and verify the NeonVM guest kernel."""
