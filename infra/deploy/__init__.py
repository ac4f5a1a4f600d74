"""How the service is deployed: the container image, a one-host compose file, Kubernetes
manifests, and the settings table generator (``python -m infra.deploy.settings_table``).
The files are described in README.md, "Deploying"."""
