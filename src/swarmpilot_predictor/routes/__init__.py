"""The service's HTTP routes, one module a group, each added to the app by its ``add_*_routes``
function (in the order :func:`~swarmpilot_predictor.api.create_app` calls them: Starlette
matches routes in the order they were added).

Routes are thin: they read the request (identities from the raw path, see :mod:`.common`),
call the :class:`~swarmpilot_predictor.service.PredictorService`, and answer in JSON.
:mod:`.lean` serves the prediction routes as bare ASGI endpoints, :mod:`.uploads` reads
multipart forms and the files they bring.
"""
