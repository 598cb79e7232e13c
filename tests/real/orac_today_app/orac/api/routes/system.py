"""GET /health, as ORAC's orac/api/routes/system.py builds it from ``client.get_health_status()``."""
from datetime import datetime

from orac.api.dependencies import get_client


async def health_check():
    try:
        client = await get_client()
        llama_health = client.get_health_status()
        if llama_health["status"] == "unhealthy":
            overall_status = "unhealthy"
        elif llama_health["status"] == "degraded":
            overall_status = "degraded"
        else:
            overall_status = "healthy"          # no_servers included: servers start on demand
        return {"status": overall_status, "timestamp": datetime.utcnow().isoformat(),
                "checks": {"api": "healthy", "llama_server": llama_health["status"],
                           "llama_restart_count": llama_health["total_restart_count"],
                           "llama_servers": llama_health["servers"]}}
    except Exception as e:
        return {"status": "unhealthy", "checks": {"api": "healthy", "llama_server": "error", "error": str(e)}}


async def get_status():
    client = await get_client()
    models = await client.list_models()
    return {"status": "ok", "models_available": len(models)}
