# volguard %preun: on removal ($1 = 0, not an upgrade) stop and disable the units.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now volguard.service volguard-backup.timer >/dev/null 2>&1 || :
fi
