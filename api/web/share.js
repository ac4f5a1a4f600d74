// A shared BitBuddy, full size: the page a sticker's QR code opens. It asks only for
// this character (GET /v1/shared/{slug}) and shows nothing of its owner.
const stage = document.getElementById("stage");
const slug = location.pathname.split("/").filter(Boolean).pop() || "";

async function start() {
  const response = await fetch(`/v1/shared/${encodeURIComponent(slug)}`);
  if (!response.ok) {
    stage.replaceChildren(Object.assign(document.createElement("p"), { textContent: "Nothing is shared here." }));
    return;
  }
  const shared = await response.json();
  const video = document.createElement("video");
  Object.assign(video, { muted: true, autoplay: true, loop: true, playsInline: true, poster: shared.assets.png });
  video.setAttribute("aria-label", "A BitBuddy");
  video.src = shared.assets.webm;
  stage.replaceChildren(video);
}

start().catch(() => {
  stage.textContent = "Can't load this BitBuddy; try again.";
});
