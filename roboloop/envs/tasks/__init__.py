"""roboloop's own MuJoCo tasks."""
