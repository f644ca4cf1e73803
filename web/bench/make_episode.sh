#!/usr/bin/env bash
# Assembles a synthetic "episode" from the committed sample pictures (no anime video is in the
# repository): shots of 2–6 s, each one picture as a still, a slow pan or a slow zoom, hard cuts
# between them, at 1280×720, 24 fps, H.264. Writes OUT.mp4 and OUT.shots.csv (start,end,picture).
# Usage: web/bench/make_episode.sh OUT [SECONDS] [SEED]   (needs ffmpeg with libx264)
set -euo pipefail
OUT=$1
SECONDS_WANTED=${2:-1440}
SEED=${3:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mapfile -t PICTURES < <(find "$HERE/../../models/sample/holoen" -name '*.jpg' | sort)
RANDOM=$SEED
t=0
i=0
echo "start,end,picture" > "$OUT.shots.csv"
: > "$WORK/list.txt"
while [ "$t" -lt "$SECONDS_WANTED" ]; do
  pic=${PICTURES[$((RANDOM % ${#PICTURES[@]}))]}
  len=$((2 + RANDOM % 5))
  case $((RANDOM % 3)) in
    0) vf="scale=1280:720,setsar=1" ;;
    1) vf="scale=1600:900,crop=1280:720:x='(iw-ow)*t/$len':y=(ih-oh)/2,setsar=1" ;;
    *) vf="scale=1280:720,zoompan=z='1+0.15*on/($len*24)':x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)':d=1:s=1280x720:fps=24,setsar=1" ;;
  esac
  seg="$WORK/seg$(printf %05d $i).mp4"
  ffmpeg -nostdin -v error -y -loop 1 -framerate 24 -t "$len" -i "$pic" -vf "$vf,fps=24,format=yuv420p" \
    -t "$len" -c:v libx264 -preset veryfast -crf 23 -g 48 "$seg"
  echo "file '$seg'" >> "$WORK/list.txt"
  echo "$t,$((t + len)),${pic#"$HERE/../../"}" >> "$OUT.shots.csv"
  t=$((t + len))
  i=$((i + 1))
done
ffmpeg -nostdin -v error -y -f concat -safe 0 -i "$WORK/list.txt" -c copy "$OUT.mp4"
echo "$OUT.mp4: $i shots, $t s"
