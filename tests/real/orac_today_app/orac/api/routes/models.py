"""Model routes, as ORAC's orac/api/routes/models.py: the client's dicts through the app's response models."""
from orac.api import HTTPException
from orac.api.dependencies import get_client
from orac.models import ModelInfo, ModelListResponse, ModelLoadRequest, ModelLoadResponse, ModelUnloadResponse


async def list_models() -> ModelListResponse:
    client = await get_client()
    models = await client.list_models()
    return ModelListResponse(models=[ModelInfo(**model) for model in models])


async def load_model(request: ModelLoadRequest) -> ModelLoadResponse:
    try:
        client = await get_client()
        result = await client.load_model(request.name)
        return ModelLoadResponse(**result)
    except Exception as e:
        raise HTTPException(status_code=500, detail=str(e))


async def unload_model(model_name: str) -> ModelUnloadResponse:
    try:
        client = await get_client()
        result = await client.unload_model(model_name)
        return ModelUnloadResponse(**result)
    except Exception as e:
        raise HTTPException(status_code=500, detail=str(e))
