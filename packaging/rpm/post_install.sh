# volguard %post: the state directory for the CLI, and a daemon-reload so systemd sees the
# units. Nothing is enabled or started: the agent needs a configured repository first.
install -d -m 0700 -o root -g root /var/lib/volguard
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    # $1 >= 2 is an upgrade: restart units that were running (try-restart starts none).
    if [ "$1" -ge 2 ]; then
        systemctl try-restart volguard.service volguard-backup.timer >/dev/null 2>&1 || :
    fi
fi
