package agent

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/yggdrasil-network/yggdrasil-go/src/address"

	"github.com/webgw/webgw/internal/certs"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/yamlconf"
)

// Config is the agent's canonical configuration, as read from its YAML file
// (`webgw agent --config FILE`) or built by `webgw expose`. Version 1.
type Config struct {
	// Version of the file format; 0 or 1.
	Version int `yaml:"version"`
	// Token is the default tenant token for every gateway; empty asks for quick tunnels.
	Token string `yaml:"token"`
	// CA is the default CA file for every gateway; empty uses system roots.
	CA string `yaml:"ca"`
	// Gateways to connect to; at least one.
	Gateways []GatewayConfig `yaml:"gateways"`
	// Services to serve; at least one.
	Services []ServiceConfig `yaml:"services"`
	// DrainTimeout bounds waiting for in-flight streams on stop; 0 means 30 s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// DialTimeout bounds dialling a gateway or a local target; 0 means 10 s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// Connections is how many tunnel connections the agent keeps to each
	// gateway, 1-MaxConnections; 0 means 2. The gateway spreads streams over
	// all of them, and one that drops is replaced while the others serve.
	Connections int `yaml:"connections"`
	// Transport is how to reach gateways: "tcp" (TLS over TCP), "quic", or
	// "auto" (whichever works); "" means auto.
	Transport string `yaml:"transport"`
	// UDPIdleTimeout ends a UDP client session of a udp:// service when no
	// datagram moved either way for that long; 0 means 60 s.
	UDPIdleTimeout time.Duration `yaml:"udp_idle_timeout"`
	// MaxGateways bounds the distinct gateways the agent holds connections
	// to. A gateway that is part of a cluster lists the cluster's live
	// gateways, and the agent connects to those it is not connected to
	// yet, with the settings of the gateway entry that listed them, until
	// it holds MaxGateways; the configured gateways count first, and are
	// all connected to even when they are more. 0 means all.
	MaxGateways int `yaml:"max_gateways"`
}

// MaxConnections bounds Config.Connections (the gateway accepts at most 16
// connections per agent).
const MaxConnections = 16

// Transports accepted in Config.Transport.
const (
	TransportAuto = "auto"
	TransportTCP  = "tcp"
	TransportQUIC = "quic"
)

// MaxWeight bounds ServiceConfig.Weight.
const MaxWeight = 1000

// GatewayConfig is one gateway to connect to.
type GatewayConfig struct {
	// Addr is HOST:PORT of the gateway's HTTPS port.
	Addr string `yaml:"addr"`
	// CA is a PEM file of CAs to trust for this gateway; overrides Config.CA.
	CA string `yaml:"ca"`
	// Fingerprint pins the gateway's key ("sha256:<hex>"), instead of a CA.
	Fingerprint string `yaml:"fingerprint"`
	// Token overrides Config.Token for this gateway.
	Token string `yaml:"token"`
	// ServerName is the TLS name to verify; empty means the host of Addr.
	ServerName string `yaml:"server_name"`
}

// ServiceConfig is one service the agent serves.
type ServiceConfig struct {
	// Name asks for NAME.<domain>; empty asks for a random quick-tunnel name.
	Name string `yaml:"name"`
	// Target is http://, https:// (TLS passthrough), h2c://, tcp:// or
	// udp:// HOST:PORT; the port is required for tcp:// and udp://.
	Target string `yaml:"target"`
	// Weight is this agent's share of the service's traffic relative to
	// other agents serving it, 1-MaxWeight; 0 means 1.
	Weight int `yaml:"weight"`
	// Port is the public port wanted for a tcp:// or udp:// target,
	// 1-65535; 0 lets the gateway pick one (or keep the one the service
	// holds). Not accepted for other targets.
	Port int `yaml:"port"`
	// ProxyProtocol, 1 or 2, makes the gateway send the target a PROXY
	// protocol header of that version (the client's address and port)
	// first on each connection; 0 sends none (unless the service's stored
	// setting says so). Not for udp:// targets.
	ProxyProtocol int `yaml:"proxy_protocol"`
	// ACMEHTTP is http://HOST:PORT, where the backend of an https:// (TLS
	// passthrough) target answers ACME HTTP-01 challenges, which the
	// gateway forwards from its HTTP port; "" means the target's host on
	// port 80. Only for https:// targets.
	ACMEHTTP string `yaml:"acme_http"`
}

// ConfigError is bad configuration; the CLI exits 2 for it.
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return e.Msg }

func cfgErr(format string, args ...any) error { return &ConfigError{Msg: fmt.Sprintf(format, args...)} }

// LoadConfig reads a YAML config file strictly: unknown keys are errors.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, cfgErr("read config %s: %v", path, err)
	}
	var c Config
	// An empty file decodes to nothing: validation then says what is missing.
	if err := yamlconf.Decode(data, &c); err != nil {
		return nil, cfgErr("config %s: %v (accepted keys: version, token, ca, gateways[addr, ca, fingerprint, token, server_name], services[name, target, weight, port, proxy_protocol, acme_http], drain_timeout, dial_timeout, connections, transport, udp_idle_timeout, max_gateways)", path, err)
	}
	return &c, nil
}

// service is a validated ServiceConfig.
type service struct {
	name     string // may be empty until the gateway assigns one
	protocol model.Protocol
	addr     string // HOST:PORT to dial
	target   string
	weight   int // 1-MaxWeight
	port     int // public port wanted (tcp, udp); 0: the gateway picks
	// proxyProtocol is the PROXY header version the target wants; 0 none.
	proxyProtocol int
	// acmeAddr is HOST:PORT that answers ACME HTTP-01 challenges for a
	// tls (passthrough) service; "" for other protocols.
	acmeAddr string
}

// targetForms lists the accepted target forms, for error messages.
const targetForms = "http://HOST:PORT, https://HOST:PORT, h2c://HOST:PORT, tcp://HOST:PORT or udp://HOST:PORT"

// ParseTarget validates a target URL and returns its protocol and address.
// The port may be left out of http:// and h2c:// targets (80) and https://
// ones (443), not out of tcp:// and udp:// ones.
func ParseTarget(target string) (model.Protocol, string, error) {
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return "", "", fmt.Errorf("target %q: want %s", target, targetForms)
	}
	var proto model.Protocol
	switch u.Scheme {
	case "http":
		proto = model.ProtoHTTP
	case "h2c":
		proto = model.ProtoH2C
	case "https":
		proto = model.ProtoTLS
	case "tcp":
		proto = model.ProtoTCP
	case "udp":
		proto = model.ProtoUDP
	default:
		return "", "", fmt.Errorf("target %q: scheme %q not accepted; want %s", target, u.Scheme, targetForms)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", "", fmt.Errorf("target %q: only SCHEME://HOST:PORT is accepted (no path, query or user)", target)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return "", "", fmt.Errorf("target %q: no host; want SCHEME://HOST:PORT", target)
	}
	if port != "" && !validPort(port) {
		return "", "", fmt.Errorf("target %q: port %q not accepted; use 1-65535", target, port)
	}
	if port == "" {
		switch u.Scheme {
		case "tcp", "udp":
			return "", "", fmt.Errorf("target %q: no port; want %s://HOST:PORT (a port 1-65535)", target, u.Scheme)
		case "https":
			port = "443"
		default:
			port = "80"
		}
	}
	return proto, net.JoinHostPort(host, port), nil
}

// validate checks c, applies defaults, and returns the parsed services.
func (c *Config) validate() ([]*service, error) {
	if c.Version != 0 && c.Version != 1 {
		return nil, cfgErr("version: %d not accepted; use 1", c.Version)
	}
	if len(c.Gateways) == 0 {
		return nil, cfgErr("gateways: at least one gateway is needed (addr: HOST:PORT)")
	}
	for i := range c.Gateways {
		g := &c.Gateways[i]
		addr, err := ResolveGatewayAddr(g.Addr)
		if err != nil {
			return nil, cfgErr("gateways[%d].addr: %v", i, err)
		}
		g.Addr = addr
		if g.Fingerprint != "" {
			if err := certs.ValidatePin(g.Fingerprint); err != nil {
				return nil, cfgErr("gateways[%d].fingerprint: %v", i, err)
			}
		}
		if g.CA == "" {
			g.CA = c.CA
		}
		if g.Token == "" {
			g.Token = c.Token
		}
		if g.CA != "" {
			if _, err := os.Stat(g.CA); err != nil {
				return nil, cfgErr("gateways[%d].ca: %v", i, err)
			}
		}
	}
	if len(c.Services) == 0 {
		return nil, cfgErr("services: at least one service is needed (target: %s)", targetForms)
	}
	seen := map[string]bool{}
	var out []*service
	for i, sc := range c.Services {
		proto, addr, err := ParseTarget(sc.Target)
		if err != nil {
			return nil, cfgErr("services[%d].target: %v", i, err)
		}
		if sc.Name != "" {
			if err := model.ValidateName(sc.Name); err != nil {
				return nil, cfgErr("services[%d].name: %v", i, err)
			}
			if seen[sc.Name] {
				return nil, cfgErr("services[%d].name: %q listed twice", i, sc.Name)
			}
			seen[sc.Name] = true
		}
		if sc.Weight < 0 || sc.Weight > MaxWeight {
			return nil, cfgErr("services[%d].weight: %d not accepted; use 1-%d (0 means 1)", i, sc.Weight, MaxWeight)
		}
		weight := max(sc.Weight, 1)
		if sc.Port < 0 || sc.Port > 65535 {
			return nil, cfgErr("services[%d].port: %d not accepted; use 1-65535 (0 lets the gateway pick)", i, sc.Port)
		}
		if sc.Port != 0 && !proto.Forwarded() {
			return nil, cfgErr("services[%d].port: only for tcp:// and udp:// targets, not %s (the public port wanted, 1-65535)", i, sc.Target)
		}
		if sc.ProxyProtocol < 0 || sc.ProxyProtocol > 2 {
			return nil, cfgErr("services[%d].proxy_protocol: %d not accepted; use 1 or 2 (0 for none)", i, sc.ProxyProtocol)
		}
		if sc.ProxyProtocol != 0 && proto == model.ProtoUDP {
			return nil, cfgErr("services[%d].proxy_protocol: not available for udp:// targets", i)
		}
		var acmeAddr string
		switch {
		case sc.ACMEHTTP != "" && proto != model.ProtoTLS:
			return nil, cfgErr("services[%d].acme_http: only for https:// (TLS passthrough) targets", i)
		case sc.ACMEHTTP != "":
			p, a, err := ParseTarget(sc.ACMEHTTP)
			if err != nil || p != model.ProtoHTTP {
				return nil, cfgErr("services[%d].acme_http: %q; want http://HOST:PORT where the backend answers ACME HTTP-01 challenges", i, sc.ACMEHTTP)
			}
			acmeAddr = a
		case proto == model.ProtoTLS:
			host, _, _ := net.SplitHostPort(addr)
			acmeAddr = net.JoinHostPort(host, "80")
		}
		out = append(out, &service{name: sc.Name, protocol: proto, addr: addr, target: sc.Target, weight: weight, port: sc.Port,
			proxyProtocol: sc.ProxyProtocol, acmeAddr: acmeAddr})
	}
	if c.DrainTimeout < 0 {
		return nil, cfgErr("drain_timeout: must not be negative")
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.DialTimeout < 0 {
		return nil, cfgErr("dial_timeout: must not be negative")
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.Connections < 0 || c.Connections > MaxConnections {
		return nil, cfgErr("connections: %d not accepted; use 1-%d (0 means 2)", c.Connections, MaxConnections)
	}
	if c.Connections == 0 {
		c.Connections = 2
	}
	if err := ValidateTransport(c.Transport); err != nil {
		return nil, cfgErr("transport: %v", err)
	}
	if c.Transport == "" {
		c.Transport = TransportAuto
	}
	if c.UDPIdleTimeout < 0 {
		return nil, cfgErr("udp_idle_timeout: must not be negative")
	}
	if c.UDPIdleTimeout == 0 {
		c.UDPIdleTimeout = 60 * time.Second
	}
	if c.MaxGateways < 0 {
		return nil, cfgErr("max_gateways: %d not accepted; use 1 or more (0 means all the cluster's gateways)", c.MaxGateways)
	}
	return out, nil
}

// yggScheme marks a gateway reached over the Yggdrasil overlay.
const yggScheme = "ygg://"

// ResolveGatewayAddr checks a gateway address and returns the HOST:PORT to
// dial. Besides HOST:PORT it takes a gateway on the Yggdrasil overlay:
// ygg://[200:...]:PORT, or ygg://PUBLICKEY[:PORT] (the gateway node's
// ed25519 key, 64 hex characters, whose 200::/7 address it derives); the
// port defaults to 443. The host's own Yggdrasil node (its TUN) carries
// those connections.
func ResolveGatewayAddr(addr string) (string, error) {
	rest, ok := strings.CutPrefix(addr, yggScheme)
	if !ok {
		return addr, ValidateGatewayAddr(addr)
	}
	host, port := rest, "443"
	if h, p, err := net.SplitHostPort(rest); err == nil {
		host, port = h, p
	} else if b, ok := strings.CutPrefix(rest, "["); ok {
		host = strings.TrimSuffix(b, "]") // [ADDR] without a port
	}
	if !validPort(port) {
		return "", fmt.Errorf("%q: the port %q is not 1-65535", addr, port)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if !yggNetwork.Contains(a) {
			return "", fmt.Errorf("%q: %s is not a Yggdrasil address (200::/7)", addr, a)
		}
		return net.JoinHostPort(a.String(), port), nil
	}
	key, err := hex.DecodeString(host)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return "", fmt.Errorf("%q: use ygg://[200:...]:PORT or ygg://PUBLICKEY:PORT (the gateway node's public key, 64 hex characters)", addr)
	}
	a, _ := netip.AddrFromSlice(address.AddrForKey(ed25519.PublicKey(key))[:])
	return net.JoinHostPort(a.String(), port), nil
}

// yggNetwork is the Yggdrasil overlay's address range.
var yggNetwork = netip.MustParsePrefix("200::/7")

// ValidateGatewayAddr checks a gateway address, HOST:PORT.
func ValidateGatewayAddr(addr string) error {
	if host, port, err := net.SplitHostPort(addr); err != nil || host == "" || !validPort(port) {
		return fmt.Errorf("%q is not HOST:PORT (a port 1-65535)", addr)
	}
	return nil
}

// ValidateTransport checks a transport name; "" is accepted (auto).
func ValidateTransport(t string) error {
	switch t {
	case "", TransportAuto, TransportTCP, TransportQUIC:
		return nil
	}
	return fmt.Errorf("%q not accepted; use auto, tcp or quic", t)
}

// IsConfigError reports whether err is bad configuration.
func IsConfigError(err error) bool {
	var ce *ConfigError
	return errors.As(err, &ce)
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535 && strconv.Itoa(n) == p
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return strings.Trim(h, "[]")
}
