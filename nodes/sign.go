package nodes

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/draupnir-db/draupnir"
)

// The headers of a request one node forwards to another. The signature is
// an HMAC-SHA256, keyed with cluster.secret, of the request (method, path
// and query, body), the target node, the principal it acts for, the
// caller's own Authorization header, the time and a nonce: nobody without
// the secret can forge or alter one, and none can be replayed.
const (
	HeaderForwardedBy  = "Draupnir-Forwarded-By"
	HeaderForwardedTo  = "Draupnir-Forwarded-To"
	HeaderForwardedFor = "Draupnir-Forwarded-For"
	HeaderForwardedAt  = "Draupnir-Forwarded-At"
	HeaderNonce        = "Draupnir-Forward-Nonce"
	HeaderSignature    = "Draupnir-Forward-Signature"
)

// MaxSkew is how far the time a forward was signed may be from the
// receiver's clock (either way): older ones are refused as replays.
const MaxSkew = time.Minute

// Signer signs the requests this node forwards and verifies those
// forwarded to it.
type Signer struct {
	node   string
	secret []byte
	now    func() time.Time

	mu     sync.Mutex
	seen   map[string]time.Time // nonces verified within MaxSkew, by expiry
	pruned time.Time            // when seen last lost its expired nonces
}

// NewSigner returns the signer of node with the cluster's secret.
func NewSigner(node string, secret []byte) *Signer {
	return &Signer{node: node, secret: secret, now: time.Now, seen: map[string]time.Time{}}
}

// Forward is who a verified forwarded request comes from and acts for.
type Forward struct {
	Node      string
	Principal draupnir.Principal
}

func principalHeader(p draupnir.Principal) string {
	if p.Upload {
		return draupnir.UploadPrincipal
	}
	return "user:" + p.Name
}

func parsePrincipal(h string) (draupnir.Principal, bool) {
	if h == draupnir.UploadPrincipal {
		return draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}, true
	}
	name, ok := strings.CutPrefix(h, "user:")
	return draupnir.Principal{Name: name}, ok && name != "" && name != draupnir.UploadPrincipal
}

func (s *Signer) mac(r *http.Request, body []byte) []byte {
	h := r.Header
	sum := sha256.Sum256(body)
	m := hmac.New(sha256.New, s.secret)
	for _, part := range []string{"draupnir-forward-1", r.Method, r.URL.RequestURI(),
		h.Get(HeaderForwardedBy), h.Get(HeaderForwardedTo), h.Get(HeaderForwardedFor), h.Get(HeaderForwardedAt),
		h.Get(HeaderNonce), h.Get("Authorization"), hex.EncodeToString(sum[:])} {
		m.Write([]byte(part))
		m.Write([]byte{0})
	}
	return m.Sum(nil)
}

// Sign marks r, whose body is body, as forwarded by this node to node to
// on behalf of p; r's Authorization header, if any, is the caller's own and
// is signed with it.
func (s *Signer) Sign(r *http.Request, body []byte, to string, p draupnir.Principal) {
	var nonce [16]byte
	_, _ = rand.Read(nonce[:]) // never fails (crypto/rand panics instead)
	h := r.Header
	h.Set(HeaderForwardedBy, s.node)
	h.Set(HeaderForwardedTo, to)
	h.Set(HeaderForwardedFor, principalHeader(p))
	h.Set(HeaderForwardedAt, strconv.FormatInt(s.now().Unix(), 10))
	h.Set(HeaderNonce, hex.EncodeToString(nonce[:]))
	h.Set(HeaderSignature, hex.EncodeToString(s.mac(r, body)))
}

// ErrForgedForward is the error of a forwarded request that does not
// verify; the detail is for the log only.
var ErrForgedForward = errors.New("the request claims to be forwarded by a node but is not signed with the cluster's secret")

// Verify checks that r, whose body is body, was forwarded to this node by
// a node holding the cluster's secret, recently, and not before, and
// returns who sent it and for whom.
func (s *Signer) Verify(r *http.Request, body []byte) (Forward, error) {
	h := r.Header
	forged := func(why string) (Forward, error) { return Forward{}, fmt.Errorf("%w: %s", ErrForgedForward, why) }
	got, err := hex.DecodeString(h.Get(HeaderSignature))
	if err != nil || len(got) != sha256.Size {
		return forged("no signature")
	}
	if !hmac.Equal(got, s.mac(r, body)) {
		return forged("bad signature")
	}
	// Signed, so the values below are a node's.
	if to := h.Get(HeaderForwardedTo); to != s.node {
		return forged(fmt.Sprintf("forwarded to node %q, not this one", to))
	}
	at, err := strconv.ParseInt(h.Get(HeaderForwardedAt), 10, 64)
	now := s.now()
	if err != nil || now.Sub(time.Unix(at, 0)).Abs() > MaxSkew {
		return forged("signed too long ago (or the nodes' clocks differ by more than a minute)")
	}
	p, ok := parsePrincipal(h.Get(HeaderForwardedFor))
	if !ok {
		return forged("no principal")
	}
	nonce := h.Get(HeaderNonce)
	s.mu.Lock()
	defer s.mu.Unlock()
	// Expired nonces go now and then, not at every call: the map holds
	// every forward of the last two minutes.
	if now.Sub(s.pruned) > MaxSkew/4 {
		for n, until := range s.seen {
			if now.After(until) {
				delete(s.seen, n)
			}
		}
		s.pruned = now
	}
	if _, dup := s.seen[nonce]; dup || len(nonce) != 32 {
		return forged("replayed")
	}
	s.seen[nonce] = now.Add(2 * MaxSkew)
	return Forward{Node: h.Get(HeaderForwardedBy), Principal: p}, nil
}
