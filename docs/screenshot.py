"""Screenshot a page in headless Chromium after it has settled (CDP over a websocket): the README's app picture.

    nli-routing app outputs/sci_wp_dispatch/wp-signature &   # then, with `pip install websockets` and Debian's chromium:
    python docs/screenshot.py http://127.0.0.1:7860/ docs/app.png 15
"""
import asyncio, base64, json, subprocess, sys, time, urllib.request
import websockets

url, out, wait = sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 12
proc = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                         "--window-size=1100,1250", "--remote-debugging-port=9333", "about:blank"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(50):
        try:
            tabs = json.load(urllib.request.urlopen("http://127.0.0.1:9333/json"))
            page = [t for t in tabs if t["type"] == "page"][0]
            break
        except Exception:
            time.sleep(0.3)

    async def main():
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=2**26) as ws:
            n = 0
            async def call(method, **params):
                nonlocal n
                n += 1
                await ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == n:
                        return msg.get("result", {})
            await call("Page.enable")
            await call("Page.navigate", url=url)
            await asyncio.sleep(wait)
            shot = await call("Page.captureScreenshot", format="png")
            open(out, "wb").write(base64.b64decode(shot["data"]))
    asyncio.run(main())
finally:
    proc.terminate()
