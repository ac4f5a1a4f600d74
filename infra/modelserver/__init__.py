"""The local model server: fal.ai's queue protocol in front of real CPU models.

In production the pipeline calls fal.ai through the unmodified ``fal-client``. Locally
``infra.falclient.make_fal_client`` points that same client here, so the same code path
runs against real (if simpler) models: NSFW scoring, photo analysis, cartoonify,
person segmentation, animation and video segmentation. It runs as its own process
(``python -m infra.modelserver``) so a crashing caller never takes a job down with it.

Layout: ``server`` (HTTP), ``jobs`` (queue, pool, stats, faults), ``webhooks`` (signed
webhook deliveries, as fal's), ``store`` (the job table on disk), ``files`` (output
storage), ``fetch`` (input URLs), ``media`` (image/video I/O), ``apps/`` (one module per
model, registered in ``apps.REGISTRY``).
"""

from infra.modelserver.server import create_app

__all__ = ["create_app"]
