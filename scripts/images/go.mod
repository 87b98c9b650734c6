// Tiny static programs packed into images by scripts/build-images.sh (stdlib only).
module spawner.dev/scripts/images

go 1.26.0
