#!/usr/bin/env bash
# Installs the system packages the project needs with apt: Java 17 and Maven (the local
# broker), Prometheus (for promtool; the server is not started), docker-compose (to validate
# deploy/compose.yaml offline), ffmpeg (watermark detection of MP3/AAC/Opus, codec attacks), chromium (browser test),
# fluid-soundfont-gm (the SoundFont make bench-soundfont compares; ENTRAIN_SOUNDFONT selects it).
set -euo pipefail
need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v promtool >/dev/null || need+=(prometheus)  # promtool checks the Prometheus config and rules
command -v docker-compose >/dev/null || need+=(docker-compose)  # parses deploy/compose.yaml; no engine needed
command -v ffmpeg >/dev/null || need+=(ffmpeg)  # decodes user uploads and runs the codec attacks in bench-watermark
command -v chromium >/dev/null || need+=(chromium)  # the listener page's browser test (headless, driven by playwright-core)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need+=(fluid-soundfont-gm)  # make bench-soundfont; ENTRAIN_SOUNDFONT=<its .sf2>
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "Missing ${need[*]}: install them (sudo apt-get install ${need[*]}) and run make again." >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
