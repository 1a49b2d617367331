from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

BODY = b'export const x = "' + b"a" * 2000 + b'";\n'


async def hello(request):
    return Response(BODY, media_type="text/javascript")


app = Starlette(routes=[Route("/{path:path}", hello)])
