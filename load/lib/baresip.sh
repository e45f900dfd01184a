# The config of a headless baresip phone (Debian's baresip 1.0), shared by the baresip
# scripts: SIP on LISTEN over UDP (and TCP when TRANSPORTS says), a HZ sine as its microphone,
# and the sndfile filter writing what it sends (dump-<time>-enc.wav) and hears
# (dump-<time>-dec.wav) into DUMP (baresip 1.0 has no file player). More lines (modules,
# ctrl_tcp_listen, rtp_ports) follow from the arguments after DUMP.
#
#   baresip_config LISTEN HZ DUMP [LINE...] > DIR/config
baresip_config() {
    local listen=$1 hz=$2 dump=$3
    shift 3
    cat <<CFG
poll_method		epoll
sip_listen		$listen
sip_transports		${TRANSPORTS:-udp}
module_path		/usr/lib/baresip/modules
module			g711.so
module			ausine.so
module			aufile.so
module			account.so
module			menu.so
module			sndfile.so
snd_path		$dump
audio_source		ausine,$hz
# ausine runs at 48 kHz only; baresip resamples to the call's codec.
ausrc_srate		48000
auplay_srate		48000
ausrc_channels		2
auplay_channels		2
audio_alert		aufile,$dump/alert.wav
CFG
    local line
    for line in "$@"; do echo "$line"; done
}
